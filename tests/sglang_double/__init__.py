"""A test double of an SGLang server: its documented HTTP wire format, a real tokenizer, no GPU."""
