"""TaskManager: runs subtasks in slots and exchanges records with other TaskManagers."""
