 True
