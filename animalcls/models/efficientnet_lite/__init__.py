"""animalcls.models.builders.efficientnet_lite."""
