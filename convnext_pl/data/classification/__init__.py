"""Classification data: digits (offline default), CIFAR, ImageFolder/ImageNet, synthetic images, and files in the genuine formats for tests and demos."""
