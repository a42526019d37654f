"""Policy packs, rules, the gate that alone creates a Release, DP insights, anonymization."""
