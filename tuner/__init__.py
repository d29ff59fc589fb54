"""coretune.tuner: config spaces, measurement, search strategies and tuning logs."""
