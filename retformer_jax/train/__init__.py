"""RetFormer training: state, optimizer, losses, input pipeline, step, checkpoints, loop."""
