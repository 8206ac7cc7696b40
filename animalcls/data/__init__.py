"""animalcls.data.dataset."""
