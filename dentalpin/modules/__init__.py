"""Built-in modules, each registered as a `dentalpin.modules` entry point like a third party."""
