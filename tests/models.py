"""Models the database tests bind to each backend (a user, their posts, comments and badges)."""
import datetime
import decimal

import peewee


class Base(peewee.Model):
    class Meta:
        database = None


class User(Base):
    name = peewee.CharField(max_length=64, unique=True)
    score = peewee.IntegerField(default=0)


class Post(Base):
    user = peewee.ForeignKeyField(User, backref="posts", on_delete="CASCADE")
    title = peewee.CharField(max_length=64)
    price = peewee.DecimalField(max_digits=12, decimal_places=2, default=decimal.Decimal("0"))
    created = peewee.DateTimeField(
        default=lambda: datetime.datetime(2024, 5, 1, 12, 30, 15, 123456))


class Comment(Base):
    post = peewee.ForeignKeyField(Post, backref="comments", on_delete="CASCADE")
    body = peewee.CharField(max_length=64)


class Badge(Base):
    user = peewee.ForeignKeyField(User, null=True, backref="badges", on_delete="SET NULL")
    label = peewee.CharField(max_length=64)


class Audit(Base):
    """Unrelated to users: writes here must not touch cached user queries."""
    event = peewee.CharField(max_length=64)


ALL = [User, Post, Comment, Badge, Audit]
