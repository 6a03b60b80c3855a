"""Detection data: COCO instances (official layout) and synthetic shapes written as a genuine COCO data set."""
