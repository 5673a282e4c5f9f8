"""lm-eval tasks defined in this repository (offline: YAML plus a JSONL file next to it).

    dlmjax_kjv           group of the three below
    dlmjax_kjv_choice    multiple choice: the last word of a held-out KJV sentence (acc)
    dlmjax_kjv_ppl       loglikelihood_rolling over the sentences (word/byte perplexity)
    dlmjax_kjv_complete  generate_until: the last two words (exact match)

Point lm-eval's TaskManager(include_path=dlmjax.harness.TASKS_DIR) (or --include_path) here.
"""
