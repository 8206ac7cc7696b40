"""animalcls.training."""
