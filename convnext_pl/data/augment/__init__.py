"""The recipe's image augmentation: the official transforms (timm), RandAugment on uint8 batches and the fast input path's batch augmentation on the device."""
