"""The Workers AI endpoint: ``POST /client/v4/accounts/{account_id}/ai/run/{model}``."""
