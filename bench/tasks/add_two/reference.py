 a + b
