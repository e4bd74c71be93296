"""Reports from MLflow: `mhc-repro report --experiment NAME` writes reports/NAME/ with

- table4.md / table4.tex   Table 4 layout (8 tasks x baseline / HC / mHC), paper 27B rows beside measured
- table1.md / table1.tex   Table 1 ablation (when runs tagged ablation=res / res+pre exist)
- figures/*.png            loss gap, grad norm, Amax per sub-layer, compute scaling (several presets)
- claims.md / claims.json  the claims ledger (PAPER.md §1, §2, §4) with verdicts under a stated rule
- README.md                index: plain-language summary, runs (ids, commits, configs), links
- configs/<run_id>.yaml    each run's config/config.yaml artifact

Modules: paper_data (published numbers, from paper_numbers.yaml), collect (MLflow -> frames), tables,
figures, evidence + claims (ledger), index (pages), report (atomic write), cli.
"""
