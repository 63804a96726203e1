"""The CamVid class table shared by every part of the project (thesis order)."""

CLASS_NAMES: tuple[str, ...] = (
    "Building", "Tree", "Sky", "Car", "SignSymbol", "Road",
    "Pedestrian", "Fence", "Column_Pole", "Sidewalk", "Bicyclist",
)
NUM_CLASSES: int = len(CLASS_NAMES)
IGNORE_INDEX: int = 11  # Void: excluded from the loss and the metrics.

# Official CamVid colours (label_colors.txt) of the 11 classes, then Void.
COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 0, 0), (128, 128, 0), (128, 128, 128), (64, 0, 128), (192, 128, 128), (128, 64, 128),
    (64, 64, 0), (64, 64, 128), (192, 192, 128), (0, 0, 192), (0, 128, 192),
    (0, 0, 0),
)
