import pytest

from animalcls.core.errors import DataError
from animalcls.core.labels import DEFAULT_CLASSES, ITALIAN_TO_ENGLISH, folder_candidates, resolve_classes, to_english


def test_all_ten_italian_names_map_to_english():
    assert len(ITALIAN_TO_ENGLISH) == 10
    assert ITALIAN_TO_ENGLISH["gatto"] == "cat" and ITALIAN_TO_ENGLISH["ragno"] == "spider"
    assert to_english("Scoiattolo") == "squirrel"


def test_default_order_is_the_study_order_not_sorted_folder_names():
    assert DEFAULT_CLASSES == ("cat", "spider", "butterfly", "elephant", "chicken")
    italian_sorted = sorted(["gatto", "ragno", "farfalla", "elefante", "gallina"])
    assert tuple(ITALIAN_TO_ENGLISH[n] for n in italian_sorted) != DEFAULT_CLASSES


def test_resolve_classes_accepts_italian_and_keeps_order():
    assert resolve_classes(["cane", "cat"]) == ("dog", "cat")
    assert resolve_classes(None) == DEFAULT_CLASSES


@pytest.mark.parametrize("bad", [[], ["cat", "gatto"]])
def test_resolve_classes_rejects_empty_or_duplicate(bad):
    with pytest.raises(DataError):
        resolve_classes(bad)


def test_folder_candidates_prefers_english_then_italian():
    assert folder_candidates("cat") == ("cat", "gatto")
    assert folder_candidates("zebra") == ("zebra",)
