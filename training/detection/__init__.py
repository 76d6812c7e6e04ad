"""Detector training on synthetic scenes: the torchvision tiny Mask R-CNN of the zoo (torchvision_train.py) and
Detectron2 R50/R101-FPN (detectron2_train.py)."""
