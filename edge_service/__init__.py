"""The edge tier: the public OpenAI-compatible API, the tokenizer, the front and back blocks, the head."""
