"""animalcls.cli.main."""
