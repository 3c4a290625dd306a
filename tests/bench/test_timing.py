"""bench.timing.measure's page-fault counts and bench.driver.merge_rounds' pooling of them."""

import mmap

from bench import driver, timing

PAGES = 40 * 2**20 // mmap.PAGESIZE


def test_measure_counts_the_page_faults_of_each_call():
    """A call that writes to every page of 40 MB it has never touched faults each page in; a call
    that touches nothing faults (almost) none."""
    # anonymous mappings, not yet touched, in base pages (transparent huge pages would take one
    # fault per 2 MB, and some systems use them for every mapping)
    arenas = [mmap.mmap(-1, PAGES * mmap.PAGESIZE) for _ in range(3)]
    for arena in arenas:
        arena.madvise(mmap.MADV_NOHUGEPAGE)
    arenas = iter(arenas)

    def touch_every_page():
        arena = next(arenas)
        for page in range(PAGES):
            arena[page * mmap.PAGESIZE] = 1

    touched = timing.measure(touch_every_page, warmup=0, repeats=3)
    idle = timing.measure(lambda: None, warmup=0, repeats=3)
    assert len(touched["minor_faults"]) == 3
    assert min(touched["minor_faults"]) >= PAGES * 0.9, touched["minor_faults"]
    assert idle["median_minor_faults"] < PAGES / 100, idle["minor_faults"]


def test_merge_rounds_pools_the_page_faults():
    rounds = [
        {"times_s": [1.0, 2.0], "cpu_times_s": [1.0, 2.0], "minor_faults": [10, 30]},
        {"times_s": [3.0], "cpu_times_s": [3.0], "minor_faults": [20]},
    ]
    merged = driver.merge_rounds(rounds)
    assert merged["minor_faults"] == [10, 30, 20]
    assert merged["median_minor_faults"] == 20
