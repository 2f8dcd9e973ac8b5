"""Block trainers: distil every block's supernet from the teacher."""
