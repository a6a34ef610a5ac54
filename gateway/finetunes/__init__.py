"""Cloudflare's finetune API: LoRA adapters registered per account (``sluice/adapters.py``)."""
