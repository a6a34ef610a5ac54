"""LoRA adapters through Cloudflare's finetune routes and ``sluice lora``: a real PEFT adapter for
SmolLM2-135M, uploaded with the real ``cloudflare`` SDK and with plain multipart to a real gateway;
bad uploads are refused by name and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import openai
import pytest
import torch
from safetensors.torch import save_file

from sluice.config import load_settings
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, start, stop, wait_until_ready
from tests.test_lora_engine import make_adapter
from worker.engines.transformers_engine import SMOLLM2_ID, resolve_weights

ACCOUNT = "acct-a"
OTHER = "acct-b"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MAX_BYTES = 4_000_000  # the r=8 q_proj/v_proj adapter is ~2.3 MB


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter for SmolLM2-135M: r=8 on q_proj and v_proj, random non-zero weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        resolve_weights(SMOLLM2_ID, Path(load_settings().cache_dir)), dtype=torch.float32
    )
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_" in name:  # peft starts lora_B at zero: the adapter would change nothing
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder))
    return folder


@dataclass
class Gateway:
    url: str
    env: dict[str, str]
    adapter_dir: Path
    keys: dict[str, str]  # account -> key

    def finetunes(self, account: str = ACCOUNT) -> str:
        return f"{self.url}/client/v4/accounts/{account}/ai/finetunes"

    def headers(self, account: str = ACCOUNT) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[account]}"}

    def sdk(self, account: str = ACCOUNT) -> cloudflare.Cloudflare:
        return cloudflare.Cloudflare(
            api_token=self.keys[account], base_url=f"{self.url}/client/v4", max_retries=0
        )

    def create(self, name: str) -> dict[str, Any]:
        response = httpx.post(self.finetunes(), json={"model": MODEL, "name": name}, headers=self.headers())
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def upload(self, ref: str, file_name: str, content: bytes, account: str = ACCOUNT) -> httpx.Response:
        return httpx.post(
            f"{self.finetunes(account)}/{ref}/finetune-assets",
            data={"file_name": file_name},
            files={"file": (file_name, content)},
            headers=self.headers(account),
            timeout=30,
        )

    def show(self, ref: str) -> dict[str, Any]:
        response = httpx.get(f"{self.finetunes()}/{ref}", headers=self.headers())
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def run_url(self, account: str = ACCOUNT) -> str:
        return f"{self.url}/client/v4/accounts/{account}/ai/run/{MODEL}"

    def run(self, lora: str, account: str = ACCOUNT) -> httpx.Response:
        return httpx.post(
            self.run_url(account),
            json={"prompt": "Hi", "max_tokens": 1, "lora": lora},
            headers=self.headers(account),
            timeout=30,
        )

    def sluice(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sluice", *args]
        # Wide enough that the table's cells are not folded across lines.
        return subprocess.run(command, env={**self.env, "COLUMNS": "250"}, capture_output=True, text=True)


@pytest.fixture(scope="module")
def gateway(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("finetune-logs")
    adapter_dir = tmp_path_factory.mktemp("adapters")
    env = {**os.environ, "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/10", "SLUICE_AUTH": "keys"}
    # The served model on the CPU engine (SmolLM2), so uploaded adapters really apply.
    env |= {"SLUICE_WORKER_METRICS_PORT": "0", "SLUICE_ADAPTER_DIR": str(adapter_dir)}
    env["SLUICE_MAX_ADAPTER_BYTES"] = str(MAX_BYTES)
    port = free_port()
    processes = [
        start("worker", env, logs / "worker.log"),
        start("gateway", {**env, "SLUICE_PORT": str(port)}, logs / "gateway.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        keys = {}
        for account in (ACCOUNT, OTHER):
            command = [sys.executable, "-m", "sluice", "keys", "create", "--account", account]
            created = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            keys[account] = created.stdout.strip().splitlines()[-1]
        wait_until_ready(url, processes)
        yield Gateway(url, env, adapter_dir, keys)
    finally:
        for process in processes:
            stop(process)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["success"] is False
    error: dict[str, Any] = body["errors"][0]
    return error


def files_in(gateway: Gateway, finetune_id: str) -> list[str]:
    """Everything in the finetune's folder, temporary files included."""
    folder = gateway.adapter_dir / ACCOUNT / finetune_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_cloudflare_sdk_uploads_an_adapter_and_lists_it(gateway: Gateway, adapter: Path) -> None:
    sdk = gateway.sdk()
    created = sdk.ai.finetunes.create(account_id=ACCOUNT, model=MODEL, name="sdk-adapter", description="test")
    assert created.name == "sdk-adapter"
    assert created.model == MODEL
    assert created.public is False
    for name in (CONFIG, WEIGHTS):
        uploaded = sdk.ai.finetunes.assets.create(
            created.id, account_id=ACCOUNT, file=(adapter / name).read_bytes(), file_name=name
        )
        assert uploaded.success is True
    # The SDK types the list's result as one finetune; the API (and Sluice) answer a list.
    listed = sdk.ai.finetunes.with_raw_response.list(account_id=ACCOUNT).http_response.json()["result"]
    mine = [f for f in listed if f["id"] == created.id]
    assert [(f["ready"], f["missing_files"]) for f in mine] == [(True, [])]
    sdk.ai.finetunes.list(account_id=ACCOUNT)  # parses without error
    assert list(sdk.ai.finetunes.public.list(account_id=ACCOUNT)) == []
    assert files_in(gateway, created.id) == [CONFIG, WEIGHTS]
    assert gateway.run("sdk-adapter").status_code == 200, "ready: usable at once"


def test_plain_multipart_uploads_by_name_in_either_order(gateway: Gateway, adapter: Path) -> None:
    finetune = gateway.create("multipart-adapter")
    assert gateway.upload("multipart-adapter", WEIGHTS, (adapter / WEIGHTS).read_bytes()).status_code == 200
    assert gateway.show(finetune["id"])["missing_files"] == [CONFIG]
    response = gateway.upload("multipart-adapter", CONFIG, (adapter / CONFIG).read_bytes())
    assert response.status_code == 200, response.text
    assert response.json()["result"]["finetune_id"] == finetune["id"]
    assert gateway.show("multipart-adapter")["ready"] is True
    again = gateway.upload("multipart-adapter", CONFIG, (adapter / CONFIG).read_bytes())
    assert again.status_code == 400
    assert "cannot be changed" in error_of(again)["message"]


def test_a_finetune_without_both_files_is_3039_when_used(gateway: Gateway, adapter: Path) -> None:
    finetune = gateway.create("half-adapter")
    assert gateway.upload(finetune["id"], CONFIG, (adapter / CONFIG).read_bytes()).status_code == 200
    shown = gateway.show(finetune["id"])
    assert shown["ready"] is False
    assert shown["missing_files"] == [WEIGHTS]
    response = gateway.run("half-adapter")
    assert response.status_code == 400
    assert error_of(response)["code"] == 3039
    assert WEIGHTS in error_of(response)["message"]


def rewritten_config(adapter: Path, **changes: object) -> bytes:
    return json.dumps({**json.loads((adapter / CONFIG).read_text()), **changes}).encode()


def weights_of_rank(rank: int) -> bytes:
    tensors = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(rank, 576),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(576, rank),
    }
    from safetensors.torch import save

    return save(tensors)


BAD_UPLOADS: dict[str, tuple[str, Any, str]] = {
    # name: (file_name, content (a function of the adapter folder), what the message names)
    "wrong architecture": (
        CONFIG,
        lambda a: rewritten_config(
            a, target_modules=["c_attn", "c_proj"], base_model_name_or_path="openai-community/gpt2"
        ),
        "not a Llama-architecture model",
    ),
    "foreign target modules": (
        CONFIG,
        lambda a: rewritten_config(a, target_modules=["query_key_value"]),
        "query_key_value",
    ),
    "not LoRA": (CONFIG, lambda a: rewritten_config(a, peft_type="IA3"), "peft_type"),
    "rank too large": (CONFIG, lambda a: rewritten_config(a, r=128), "r=128"),
    "not JSON": (CONFIG, lambda a: b"{not json", "not a PEFT adapter config"),
    "corrupt safetensors": (
        WEIGHTS,
        lambda a: (a / WEIGHTS).read_bytes()[:5000],
        "not a loadable safetensors",
    ),
    "weights of too large a rank": (WEIGHTS, lambda a: weights_of_rank(128), "r=128"),
    "too large": (WEIGHTS, lambda a: b"\0" * (MAX_BYTES + 1), "too large"),
    "unknown file name": ("model.bin", lambda a: b"x", "file_name"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_is_refused_and_leaves_nothing(gateway: Gateway, adapter: Path, case: str) -> None:
    file_name, content, named = BAD_UPLOADS[case]
    finetune = gateway.create(f"bad-{case.replace(' ', '-')}")
    response = gateway.upload(finetune["id"], file_name, content(adapter))
    assert response.status_code in (400, 413), response.text
    assert named in error_of(response)["message"]
    assert gateway.show(finetune["id"])["missing_files"] == [CONFIG, WEIGHTS]
    assert files_in(gateway, finetune["id"]) == []  # no half-written or temporary file either


def test_weights_that_disagree_with_the_config_are_refused(gateway: Gateway, adapter: Path) -> None:
    finetune = gateway.create("mismatched")
    config = rewritten_config(adapter, target_modules=["q_proj", "k_proj", "v_proj"])
    assert gateway.upload(finetune["id"], CONFIG, config).status_code == 200
    response = gateway.upload(finetune["id"], WEIGHTS, (adapter / WEIGHTS).read_bytes())
    assert response.status_code == 400
    assert "k_proj" in error_of(response)["message"]
    assert gateway.show(finetune["id"])["missing_files"] == [WEIGHTS]
    assert files_in(gateway, finetune["id"]) == [CONFIG]


def test_adapters_are_private_to_their_account(gateway: Gateway, adapter: Path) -> None:
    gateway.create("private-adapter")
    # Another account's key on this account's path: 403, in the SDK too.
    response = httpx.get(gateway.finetunes(ACCOUNT), headers=gateway.headers(OTHER))
    assert response.status_code == 403
    with pytest.raises(cloudflare.PermissionDeniedError):
        gateway.sdk(OTHER).ai.finetunes.create(account_id=ACCOUNT, model=MODEL, name="intruder")
    refused = gateway.upload("private-adapter", CONFIG, (adapter / CONFIG).read_bytes(), account=OTHER)
    assert refused.status_code == 404
    # On its own path, the other account neither sees nor can use it.
    listed = httpx.get(gateway.finetunes(OTHER), headers=gateway.headers(OTHER)).json()["result"]
    assert listed == []
    used = gateway.run("private-adapter", account=OTHER)
    assert used.status_code == 400
    assert "'private-adapter'" in error_of(used)["message"]


def test_an_unknown_adapter_is_a_400_naming_it(gateway: Gateway) -> None:
    response = gateway.run("no-such-adapter")
    assert response.status_code == 400
    assert "'no-such-adapter'" in error_of(response)["message"]


def test_create_refuses_a_model_not_served_and_a_name_taken(gateway: Gateway) -> None:
    other = httpx.post(gateway.finetunes(), json={"model": "@cf/x/y", "name": "n"}, headers=gateway.headers())
    assert other.status_code == 400
    assert error_of(other)["code"] == 5007
    gateway.create("taken")
    again = httpx.post(gateway.finetunes(), json={"model": MODEL, "name": "taken"}, headers=gateway.headers())
    assert again.status_code == 409


def test_delete_removes_the_record_and_the_files(gateway: Gateway, adapter: Path) -> None:
    finetune = gateway.create("doomed")
    assert gateway.upload("doomed", CONFIG, (adapter / CONFIG).read_bytes()).status_code == 200
    response = httpx.delete(f"{gateway.finetunes()}/doomed", headers=gateway.headers())
    assert response.status_code == 200
    assert response.json()["result"]["id"] == finetune["id"]
    assert httpx.get(f"{gateway.finetunes()}/doomed", headers=gateway.headers()).status_code == 404
    assert not (gateway.adapter_dir / ACCOUNT / finetune["id"]).exists()


def test_sluice_lora_add_list_rm(gateway: Gateway, adapter: Path, tmp_path: Path) -> None:
    add = ["lora", "add", "--account", ACCOUNT, "--name", "cli-adapter"]
    added = gateway.sluice(*add, "--config", str(adapter / CONFIG), "--weights", str(adapter / WEIGHTS))
    assert added.returncode == 0, added.stdout + added.stderr
    listed = gateway.sluice("lora", "list", "--account", ACCOUNT)
    assert "cli-adapter" in listed.stdout
    assert "yes" in listed.stdout
    assert gateway.show("cli-adapter")["ready"] is True  # the gateway sees what the CLI added
    # A refused file takes the whole finetune away again: nothing half-registered.
    corrupt = tmp_path / WEIGHTS
    corrupt.write_bytes(b"garbage")
    bad = gateway.sluice(*add[:-1], "cli-bad", "--config", str(adapter / CONFIG), "--weights", str(corrupt))
    assert bad.returncode == 1
    assert "not a loadable safetensors" in bad.stderr
    assert "cli-bad" not in gateway.sluice("lora", "list", "--account", ACCOUNT).stdout
    removed = gateway.sluice("lora", "rm", "--account", ACCOUNT, "cli-adapter")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "cli-adapter" not in gateway.sluice("lora", "list", "--account", ACCOUNT).stdout
    assert gateway.sluice("lora", "rm", "--account", ACCOUNT, "cli-adapter").returncode == 1


def test_weights_ranks_are_read_from_the_safetensors_header(tmp_path: Path) -> None:
    from sluice.adapters import check_weights

    path = tmp_path / WEIGHTS
    prefix = "base_model.model.model.layers.0.mlp.down_proj"
    save_file(
        {f"{prefix}.lora_A.weight": torch.ones(4, 1536), f"{prefix}.lora_B.weight": torch.ones(576, 4)}, path
    )
    assert check_weights(path, 64).ranks == {"down_proj": {4}}


def test_an_uploaded_adapter_changes_the_answer_in_both_apis(gateway: Gateway, tmp_path: Path) -> None:
    """Two adapters uploaded with the SDK: each answer differs from the base model's and from the
    other's, and OpenAI's ``<base>:<adapter>`` and bare adapter name pick the same adapter."""
    weights = resolve_weights(SMOLLM2_ID, Path(load_settings().cache_dir))
    sdk = gateway.sdk()
    for name, seed in (("tone-a", 1), ("tone-b", 2)):
        folder = make_adapter(weights, tmp_path / name, seed, ["q_proj", "v_proj"])
        created = sdk.ai.finetunes.create(account_id=ACCOUNT, model=MODEL, name=name)
        for file_name in (CONFIG, WEIGHTS):
            content = (folder / file_name).read_bytes()
            sdk.ai.finetunes.assets.create(created.id, account_id=ACCOUNT, file=content, file_name=file_name)

    def native(lora: str | None) -> str:
        body: dict[str, Any] = {"prompt": "Name a fruit.", "max_tokens": 12, "temperature": 0}
        body |= {"lora": lora} if lora else {}
        response = httpx.post(gateway.run_url(), json=body, headers=gateway.headers(), timeout=60)
        assert response.status_code == 200, response.text
        answer: str = response.json()["result"]["response"]
        return answer

    base, a, b = native(None), native("tone-a"), native("tone-b")
    assert len({base, a, b}) == 3, (base, a, b)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.keys[ACCOUNT], max_retries=0)
    for model in (f"{MODEL}:tone-a", "tone-a"):
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=12, temperature=0
        )
        assert chat.choices[0].message.content == a
        assert chat.model == model
    listed = {m.id: m for m in client.models.list()}
    assert {MODEL, "tone-a", "tone-b"} <= set(listed), "the account's ready adapters are models too"
    assert (listed["tone-a"].owned_by, getattr(listed["tone-a"], "parent", None)) == (ACCOUNT, MODEL)
    assert client.models.retrieve("tone-a") == listed["tone-a"], "each listed model can be retrieved"
    other = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.keys[OTHER], max_retries=0)
    assert "tone-a" not in {m.id for m in other.models.list()}, "another account's are not listed"
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve("tone-a")
