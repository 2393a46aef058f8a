from clm.policy.progress import ProgressView


def test_a_stop_and_copy_move_rises_to_100_and_never_goes_back() -> None:
    view, seen = ProgressView(every_seconds=0), []
    view.begin("network-prepare", 0.0)
    view.ended("network-prepare", 0.1)
    seen.append(view.percent)
    view.begin("dump", 1.0)
    for done in range(0, 101, 20):
        view.heard(step="dump", round_=None, done=done, total=100, elapsed=1 + done / 10, now=1 + done / 10)
        seen.append(view.percent)
    view.ended("dump", 12.0)
    view.begin("restore", 12.0)
    view.ended("restore", 13.5)
    view.finished()
    seen.append(view.percent)
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert 45.0 < seen[3] < 90.0  # bytes move the dump's share
    status = view.status(14.0)
    assert status["frozenSeconds"] == 12.5 and status["bytesMoved"] == 100


def test_pre_copy_rounds_share_their_span_without_a_known_count() -> None:
    view = ProgressView(every_seconds=0)
    ends = []
    for n in range(1, 9):
        view.begin("pre-dump", float(n), round_=n)
        view.heard(step="pre-dump", round_=n, done=10, total=10, elapsed=1.0, now=n + 0.5)
        view.ended("pre-dump", n + 0.9)
        ends.append(view.percent)
    assert ends == sorted(ends) and ends[-1] < 45.0 and len(set(ends)) == len(ends)
    assert view.status(9.0)["step"] == "pre-dump round 8" and view.status(9.0)["bytesMoved"] == 80


def test_progress_of_another_step_or_out_of_order_is_ignored() -> None:
    view = ProgressView(every_seconds=0)
    view.begin("dump", 0.0)
    assert view.heard(step="dump", round_=None, done=50, total=100, elapsed=1.0, now=1.0)
    assert not view.heard(step="dump", round_=None, done=40, total=100, elapsed=0.9, now=1.1)
    assert not view.heard(step="pre-dump", round_=3, done=90, total=100, elapsed=1.0, now=1.2)
    assert view.bytes_done == 50


def test_writes_are_bounded_and_say_the_rate_and_time_left() -> None:
    view = ProgressView(every_seconds=2.0)
    view.begin("dump", 0.0)
    assert view.heard(step="dump", round_=None, done=25, total=100, elapsed=1.0, now=1.0)
    status = view.status(1.0)
    view.written(1.0)
    assert status["bytesPerSecond"] == 25 and status["etaSeconds"] == 3.0 and status["frozenSeconds"] == 1.0
    assert not view.heard(step="dump", round_=None, done=50, total=100, elapsed=2.0, now=2.0)
    assert view.heard(step="dump", round_=None, done=75, total=100, elapsed=3.0, now=3.0)


def test_post_copy_counts_the_pages_arriving_after_the_resume() -> None:
    view, seen = ProgressView(every_seconds=0), []
    view.begin("dump", 0.0, post_copy=True)
    view.heard(step="dump", round_=None, done=2_000, total=2_000, elapsed=0.1, now=0.1)
    view.ended("dump", 0.2)
    view.on_demand = 40 * 4096
    view.begin("restore", 0.2, post_copy=True)
    view.ended("restore", 0.5)
    seen.append(view.percent)
    assert seen[0] <= 60.0, "the dump of a post-copy move is a small share: the fill is the rest"
    view.begin("fill", 0.6, post_copy=True)
    assert view.status(0.6)["pagesTotal"] == 40 and view.status(0.6)["pagesOnDestination"] == 0
    # The destination does not know the total: 0, and the dump's count stands.
    for done in (10, 20, 40):
        view.heard(step="fill", round_=None, done=done * 4096, total=0, elapsed=done / 10, now=1 + done)
        seen.append(view.percent)
    assert seen == sorted(seen) and 90.0 < seen[-1] <= 99.0
    status = view.status(50.0)
    assert status["pagesOnDestination"] == 40 and status["frozenSeconds"] == 0.5
    assert status["bytesMoved"] == 2_000 + 40 * 4096


def test_the_answer_counts_the_bytes_when_the_last_progress_came_too_late() -> None:
    view = ProgressView(every_seconds=0)
    view.begin("dump", 0.0)
    view.heard(step="dump", round_=None, done=60, total=100, elapsed=1.0, now=1.0)
    view.ended("dump", 2.0, moved=100)
    view.begin("restore", 2.0)
    assert not view.heard(step="dump", round_=None, done=100, total=100, elapsed=2.0, now=2.1)
    assert view.status(3.0)["bytesMoved"] == 100
