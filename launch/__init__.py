"""Cluster launch: `launch.submit` runs `xlc train` on a Ray cluster as a Ray job (`xlc submit`)."""
