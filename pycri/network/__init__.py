"""Pod networking: CNI configuration discovery and plugin execution."""
