"""Step 13's tiny generated set for tests: 16 + 8 images of 128 px, PNG (the CI prefix's set)."""

STEP13_TINY_DATA = ["--num-train", "16", "--num-val", "8", "--image-size", "128"]
STEP13_TINY_DATA += ["--image-format", "png"]
