"""The SQL index of the Patient / Study / Series / Instance hierarchy."""
