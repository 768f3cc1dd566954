"""kestream's benchmarks (see ../shared/BENCHMARKS.md). Figures are printed, never asserted."""
