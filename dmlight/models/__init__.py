"""The networks of both papers, composed from parts: `grid` (the archs, activations and paper names, torch-free),
`layers` (Abs, Neg, OffsetL2, the stacked Linear of ensembles), `networks` (the builder, unit counts)."""
