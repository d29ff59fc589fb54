"""coretune.kernels: parameterised kernel templates, dialect renderers and device runtimes."""
