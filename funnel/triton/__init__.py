"""The ranker on Triton: the model repository training writes, the model Triton runs, and the client
the ranking service (and the benchmarks) call it with."""
