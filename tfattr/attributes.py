"""The 40 CelebA attribute names, in the column order of `list_attr_celeba.txt`.

This is the ONLY copy of the attribute order in the project: readers, the
synthetic generator, the model heads, the export's `assets/attributes.txt`
and every report index into this tuple.
"""

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes",
    "Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie",
    "Young",
)
NUM_ATTRIBUTES = len(ATTRIBUTE_NAMES)
ATTRIBUTE_INDEX = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}


def attribute_indices(names):
    """Indices of `names` in ATTRIBUTE_NAMES; unknown names raise ValueError."""
    unknown = [n for n in names if n not in ATTRIBUTE_INDEX]
    if unknown:
        raise ValueError(f"unknown attribute name(s) {unknown}; expected names from {ATTRIBUTE_NAMES}")
    return [ATTRIBUTE_INDEX[n] for n in names]
