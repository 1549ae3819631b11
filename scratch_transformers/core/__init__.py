"""What every method shares: validation, gradient checking, layers, optimisers, training, data."""
