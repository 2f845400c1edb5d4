"""Real deployments on Flower's Deployment Engine: certificates, node keys, a local federation."""
