"""Image sources (files, a `datasets` dataset) list their images once, whichever of `image_ids` and `images` is
asked first, and give the same images either way."""

import datasets
import pytest
from dataset_helpers import image_dataset
from golden import golden_image_path

from butd_frcnn.extraction.dataset_input import DatasetSource
from butd_frcnn.extraction.inputs import FileSource, ImageSource


@pytest.fixture
def files():
    return {name: golden_image_path(name) for name in ("astronaut", "camera", "rocket")}


def file_source(files):
    return FileSource([str(path) for path in files.values()])


def dataset_source(files):
    return DatasetSource(image_dataset(files, odd_rows=False), id_column="name")


def streamed_source(files):
    return DatasetSource(image_dataset(files, odd_rows=False).to_iterable_dataset(), id_column="name")


SOURCES = [file_source, dataset_source, streamed_source]


@pytest.mark.parametrize("make_source", SOURCES)
def test_images_first_gives_what_images_after_the_ids_gives(make_source, files):
    fresh = make_source(files)
    images_first = [(entry.image_id, entry.path, entry.data) for entry in fresh.images([0, 2])]
    listed = make_source(files)
    ids = listed.image_ids()
    images_after = [(entry.image_id, entry.path, entry.data) for entry in listed.images([0, 2])]
    assert images_first == images_after
    assert [image_id for image_id, _, _ in images_first] == [ids[0], ids[2]]
    assert fresh.image_ids() == ids == list(files)


@pytest.mark.parametrize("make_source", SOURCES)
def test_the_listing_happens_once(make_source, files, monkeypatch):
    source = make_source(files)
    calls = []
    list_image_ids = type(source)._list_image_ids
    monkeypatch.setattr(type(source), "_list_image_ids", lambda self: calls.append(1) or list_image_ids(self))
    list(source.images([1]))
    assert source.image_ids() is source.image_ids()
    assert len(calls) == 1


def test_a_source_must_say_how_it_lists_and_reads():
    class Incomplete(ImageSource):
        def describe(self) -> str:
            return "nothing"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    assert datasets  # the dataset sources above are real `datasets` objects
