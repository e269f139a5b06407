# Return the user called name from users, or None when there is none.
def find_user(users, name):
    for user in users:
        if user["name"] == name:
            return user
    return