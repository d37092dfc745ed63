"""Model loading, the per-architecture layout table, activation hooks and tokenization helpers."""
