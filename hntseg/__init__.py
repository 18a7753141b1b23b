"""hntseg: head-and-neck tumour segmentation on mid-treatment MRI (HNTS-MRG 2024 Task 2)."""

__version__ = "0.1.0"
