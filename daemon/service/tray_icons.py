"""The tray icon for each state, told apart by shape as well as colour (for colour-blind users).

not running: a hollow grey ring · idle: a filled green disc · syncing: two blue arrows in a circle
· run in progress: a violet "play" triangle · attention: an orange diamond with a "!" · paused: two
amber bars.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from .tray_model import IconState

SIZE = 64


def icon_image(state: IconState, size: int = SIZE) -> Image.Image:
    """A ``size``-square RGBA image of ``state``'s icon (transparent background)."""
    big = SIZE * 4  # drawn large, scaled down: smooth edges without antialiasing support
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    m, w = big // 8, big // 10
    box = (m, m, big - m, big - m)
    if state is IconState.NOT_RUNNING:
        draw.ellipse(box, outline=(128, 128, 128, 255), width=w)
    elif state is IconState.IDLE:
        draw.ellipse(box, fill=(46, 160, 67, 255))
    elif state is IconState.SYNCING:
        blue = (31, 111, 235, 255)
        draw.arc(box, 200, 340, fill=blue, width=w)
        draw.arc(box, 20, 160, fill=blue, width=w)
        c, r = big // 2, big // 2 - m
        draw.polygon([(c + r - w, c - w), (c + r + w, c - w), (c + r, c + w // 2)], fill=blue)
        draw.polygon([(c - r - w, c + w), (c - r + w, c + w), (c - r, c - w // 2)], fill=blue)
    elif state is IconState.RUNNING:
        draw.polygon([(m * 2, m), (big - m, big // 2), (m * 2, big - m)], fill=(130, 80, 223, 255))
    elif state is IconState.ATTENTION:
        c = big // 2
        draw.polygon(
            [(c, m // 2), (big - m // 2, c), (c, big - m // 2), (m // 2, c)],
            fill=(219, 109, 40, 255),
        )
        draw.rectangle((c - w // 2, c - 3 * w, c + w // 2, c + w // 2), fill=(255, 255, 255, 255))
        draw.rectangle((c - w // 2, c + w, c + w // 2, c + 2 * w), fill=(255, 255, 255, 255))
    elif state is IconState.PAUSED:
        amber = (191, 135, 0, 255)
        draw.rectangle((m * 2, m, m * 2 + 2 * w, big - m), fill=amber)
        draw.rectangle((big - m * 2 - 2 * w, m, big - m * 2, big - m), fill=amber)
    return image.resize((size, size), Image.Resampling.LANCZOS)
