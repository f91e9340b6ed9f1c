"""The rest of the img2img panel from Slack: options in a mention, then a reply changing them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scenario_kit import png

from bot.model import JobState
from tests.slack.test_slack_replies import _reply

if TYPE_CHECKING:
    from tests.slack.conftest import SlackRig


async def test_panel_options_from_a_mention_and_a_reply(rig: SlackRig) -> None:
    await rig.post(
        "<@UBOT> img2img a cat seed=5 batch_count=2 clip_skip=2 tiling=on scheduler=karras "
        "subseed=11 subseed_strength=0.25 restore_faces=yes image_cfg=1 noise_multiplier=0.5",
        files=[rig.fake.add_file("cat.png", png(96, 64))],
    )
    await rig.settle()
    [base] = await rig.jobs()
    assert base.state is JobState.SUCCEED, base.error
    p = base.params
    assert p is not None and base.result_count == 2
    assert (p.batch_count, p.clip_skip, p.tiling, p.scheduler) == (2, 2, True, "Karras")
    assert (p.subseed, p.subseed_strength, p.restore_faces) == (11, 0.25, True)
    assert (p.image_cfg, p.noise_multiplier) == (1.0, 0.5)
    new = await _reply(rig, base, "clip_skip=1 tiling=off scale=1.5")
    assert new is not None and new.params is not None
    q = new.params
    assert (q.clip_skip, q.tiling, q.batch_count, q.seed, q.subseed) == (1, False, 2, 5, 11)
    assert (q.width, q.height) == (144, 96)  # 96 × 1.5, 64 × 1.5
