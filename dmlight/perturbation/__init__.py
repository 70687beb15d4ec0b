"""The perturbation test: `formulas` (USE's and LEARN's values from unit ranges, the grids), `site` (where a
probe acts in a model), `engine` (the sweep engines and result files), `probe` (DistanceProbe, the callback)."""
