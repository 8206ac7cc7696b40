"""animalcls.models.builders."""
