"""The ClientApp: local meta-training and honest personalised evaluation."""
