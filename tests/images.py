"""Real image files of every odd kind, written by the tests themselves."""

import cv2
import numpy as np
from PIL import Image


def make_odd_images(folder) -> dict[str, str]:
    """Real image files of every odd kind a dataset holds, written with Pillow and OpenCV."""
    generator = np.random.default_rng(0)
    rgb = (generator.random((37, 53, 3)) * 255).astype(np.uint8)
    rgb[:, :20] = np.linspace(0, 255, 20)[None, :, None].astype(np.uint8)
    alpha = (generator.random((37, 53)) * 255).astype(np.uint8)
    files = {}

    def save(name, image, **kwargs):
        path = folder / name
        image.save(path, **kwargs)
        files[name] = str(path)

    save("rgb.png", Image.fromarray(rgb))
    save("grey.png", Image.fromarray(rgb).convert("L"))
    save("bilevel.png", Image.fromarray(rgb).convert("1"))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=64))
    save(
        "palette_transparency.png",
        Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=64),
        transparency=3,
    )
    save("rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    save("grey_alpha.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("LA"))
    save("grey16.png", Image.fromarray((generator.random((37, 53)) * 65535).astype(np.uint16)))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    save("rgb.jpg", Image.fromarray(rgb), quality=90)
    exif_image = Image.fromarray(rgb)
    exif = exif_image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    save("exif_rotated.jpg", exif_image, exif=exif.tobytes(), quality=95)
    frames = [Image.fromarray(np.roll(rgb, shift, axis=1)) for shift in range(3)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("rgb.webp", Image.fromarray(rgb), lossless=True)
    save("rgb.bmp", Image.fromarray(rgb))
    save("rgb.tiff", Image.fromarray(rgb))
    rgb16 = folder / "rgb16.png"
    cv2.imwrite(str(rgb16), (generator.random((37, 53, 3)) * 65535).astype(np.uint16))
    files["rgb16.png"] = str(rgb16)
    return files
