"""nnU-Net trainer classes of hntseg, found through nnU-Net's `nnUNet_extTrainer` path.

nnunetv2 (2.8) looks a trainer up by class name: first in its own package, then in every
folder listed in `nnUNet_extTrainer`, importing each module there as a top-level module.
`hntseg.nnunet.set_environment` adds this folder, so `nnUNetTrainerHntsegShort` is found
at training and at prediction time without writing into site-packages.
"""
