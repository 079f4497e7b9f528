"""The rank side of a run: what runs models, on a launched rank or as the one rank in
this process."""
