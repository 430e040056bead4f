"""Reddit dumps -> reward-model examples: pure transforms (records, threads, labels) and one Ray Data pipeline (prepare)."""
