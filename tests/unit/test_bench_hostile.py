"""bench.hostile: every hostile body ends in an error code of ours, the real request in a prepared image."""

from __future__ import annotations

from bench import hostile


def test_hostile_bodies_are_refused_and_the_real_request_is_served(capsys) -> None:
    assert hostile.main(["--mb", "0.05", "--reps", "1"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    answers = {(row[0].removeprefix("| "), row[2]): row[4].removesuffix(" |") for row in rows}
    assert len(answers) == 2 * len(hostile.bodies(0.05))
    for (body, delivery), answer in answers.items():
        if body.startswith("a real request"):
            assert answer == "ok", (body, delivery)
        else:
            assert answer and "ok" not in answer.split(", "), (body, delivery, answer)
