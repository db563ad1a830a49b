"""Schema glue of each op: fake kernels, autograd, backend kernels, input validation."""
