 kwargs
